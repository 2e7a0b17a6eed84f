"""One module per area of the CLI; each has `register(subparsers)`."""
