"""officina.hub: the hub side (authenticator, spawners, supervisor, the officina command)."""
