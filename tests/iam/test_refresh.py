"""Refreshing: rotation, revocation, up-scoping, suspended users, concurrency."""

import threading

import yaml


def test_refresh_returns_new_access_and_id_token(iam):
    first = iam.tokens("alice")
    response = iam.refresh(first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["access_token"] != first["access_token"]
    assert second["scope"] == first["scope"]
    # The hub client is not rotating: the same refresh token comes back.
    assert second["refresh_token"] == first["refresh_token"]

    old_id, new_id = iam.verify(first["id_token"]), iam.verify(second["id_token"])
    assert new_id["jti"] != old_id["jti"]
    assert new_id["sub"] == old_id["sub"] and new_id["aud"] == "hub"
    assert new_id["auth_time"] == old_id["auth_time"]
    assert iam.verify(second["access_token"])["sub"] == old_id["sub"]
    # And it keeps working.
    assert iam.refresh(first["refresh_token"]).status_code == 200


def test_rotating_client_gets_new_refresh_token_and_old_one_dies(iam):
    first = iam.tokens("alice", client_id="rotating")
    second = iam.refresh(first["refresh_token"], client_id="rotating").json()
    assert second["refresh_token"] != first["refresh_token"]
    assert iam.verify(second["id_token"])["aud"] == "rotating"

    status, error, _ = iam.error_of(iam.refresh(first["refresh_token"], client_id="rotating"))
    assert (status, error) == (401, "invalid_token")
    assert iam.refresh(second["refresh_token"], client_id="rotating").status_code == 200


def test_revoked_refresh_token_gets_401_invalid_token(iam):
    refresh = iam.tokens("alice")["refresh_token"]
    revoke = iam.post("/revoke", data={"token": refresh, "token_type_hint": "refresh_token"},
                      auth=("hub", iam.secret_of("hub")))
    assert revoke.status_code == 200
    status, error, _ = iam.error_of(iam.refresh(refresh))
    assert (status, error) == (401, "invalid_token")


def test_unknown_refresh_token_gets_401_invalid_token(iam):
    status, error, _ = iam.error_of(iam.refresh("eyJhbGciOiJub25lIn0.eyJqdGkiOiJ4In0."))
    assert (status, error) == (401, "invalid_token")


def test_refresh_token_of_another_client_gets_401(iam):
    refresh = iam.tokens("alice", client_id="rotating")["refresh_token"]
    status, error, _ = iam.error_of(iam.refresh(refresh, client_id="hub"))
    assert (status, error) == (401, "invalid_token")


def test_up_scoping_is_refused(iam):
    refresh = iam.tokens("alice", scope="openid profile offline_access")["refresh_token"]
    status, error, description = iam.error_of(
        iam.refresh(refresh, scope="openid profile email offline_access")
    )
    assert (status, error, description) == (400, "invalid_scope", "Up-scoping is not allowed.")


def test_down_scoping_then_full_scope_again(iam):
    refresh = iam.tokens("alice", scope="openid profile email offline_access")["refresh_token"]
    narrow = iam.refresh(refresh, scope="openid profile").json()
    assert narrow["scope"] == "openid profile"
    assert iam.verify(narrow["access_token"])["scope"] == "openid profile"
    full = iam.refresh(refresh).json()
    assert full["scope"].split() == ["openid", "profile", "email", "offline_access"]


def test_audience_is_kept_across_refreshes(iam):
    first = iam.tokens("alice", audience="https://storage.example.org")
    second = iam.refresh(first["refresh_token"]).json()
    assert iam.verify(second["access_token"])["aud"] == "https://storage.example.org"
    other = iam.refresh(first["refresh_token"], audience="https://other.example.org").json()
    assert iam.verify(other["access_token"])["aud"] == "https://other.example.org"


def test_bad_client_credentials_on_refresh_are_401_invalid_client(iam):
    refresh = iam.tokens("alice")["refresh_token"]
    data = {"grant_type": "refresh_token", "refresh_token": refresh}
    attempts = [
        iam.refresh(refresh, secret="wrong-secret"),  # HTTP Basic, wrong secret
        iam.post("/token", data=data, auth=("nobody", "x")),  # unknown client
        iam.post("/token", data={**data, "client_id": "hub", "client_secret": "nope"}),
        iam.post("/token", data=data),  # no client authentication at all
    ]
    for response in attempts:
        assert iam.error_of(response)[:2] == (401, "invalid_client"), response.text
    # The secret in the form (client_secret_post) is accepted as well as HTTP Basic.
    response = iam.post("/token", data={**data, "client_id": "hub",
                                        "client_secret": iam.secret_of("hub")})
    assert response.status_code == 200


def test_suspended_user_gets_401_unauthorized(iam):
    tokens = iam.tokens("carol")
    assert iam.refresh(tokens["refresh_token"]).status_code == 200
    original = iam.users_file.read_text()
    document = yaml.safe_load(original)
    for user in document["users"]:
        if user["username"] == "carol":
            user["active"] = False
    try:
        iam.users_file.write_text(yaml.safe_dump(document))
        status, error, description = iam.error_of(iam.refresh(tokens["refresh_token"]))
        assert (status, error) == (401, "unauthorized")
        assert description == "User carol is not active."
        # Access tokens issued before stay valid until they expire, as in IAM.
        assert iam.userinfo(tokens["access_token"]).status_code == 200
    finally:
        iam.users_file.write_text(original)
    assert iam.refresh(tokens["refresh_token"]).status_code == 200


def _refresh_concurrently(iam, refresh_token, client_id, count=8):
    barrier = threading.Barrier(count)
    results = []

    def worker():
        barrier.wait()
        results.append(iam.refresh(refresh_token, client_id=client_id))

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_refreshes_with_rotation_have_one_winner(iam):
    refresh = iam.tokens("alice", client_id="rotating")["refresh_token"]
    results = _refresh_concurrently(iam, refresh, "rotating")
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] + [401] * 7, [r.text for r in results]
    assert {r.json()["error"] for r in results if r.status_code == 401} == {"invalid_token"}
    winner = next(r.json() for r in results if r.status_code == 200)
    assert iam.refresh(winner["refresh_token"], client_id="rotating").status_code == 200


def test_concurrent_refreshes_without_rotation_all_succeed(iam):
    refresh = iam.tokens("alice")["refresh_token"]
    results = _refresh_concurrently(iam, refresh, "hub")
    assert [r.status_code for r in results] == [200] * 8
    assert len({r.json()["access_token"] for r in results}) == 8
    assert iam.refresh(refresh).status_code == 200
