"""`python -m convirt_hf.demo --model <folder or Hub id>`: see `convirt_hf.demo.cli`."""

from .cli import cli

if __name__ == "__main__":
    cli()
