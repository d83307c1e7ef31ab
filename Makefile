# The README's two set-up commands: `make run` (the service on embedded defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 5000
WORKERS ?= 1

.PHONY: install run test lint clean

$(BIN)/xray: pyproject.toml setup.py $(wildcard shared/*.c)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(BIN)/xray

install: $(BIN)/xray

run: install
	$(BIN)/xray up --port $(PORT) --workers $(WORKERS)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf var test-output .pytest_cache
