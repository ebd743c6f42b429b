# The two commands of the README. Each installs what it needs first (scripts/install.sh).
.PHONY: up test

up:
	scripts/install.sh
	.venv/bin/officina up

test:
	scripts/install.sh --test
	.venv/bin/python -m pytest
