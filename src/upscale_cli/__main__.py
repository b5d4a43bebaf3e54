"""`python -m upscale_cli` runs the same CLI as the `upscale` script."""

from upscale_cli.cli import main

if __name__ == "__main__":
    main()
