# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test validate lint format venv clean

$(BIN)/flotilla: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[agent,test]'
	touch $@

venv: $(BIN)/flotilla

run: venv
	$(BIN)/flotilla up

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: venv lint
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/pytest $(PYTEST_ARGS)

# The simulator checked against the real torch engine (tests/test_sim_validation.py), on its
# own: a timing measurement wants a quiet machine and a fresh process.
validate: venv
	$(BIN)/pytest -m validation -s tests/test_sim_validation.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
