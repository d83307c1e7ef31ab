"""The `xray` command. Each subcommand lives in its own module and imports heavy code lazily."""
