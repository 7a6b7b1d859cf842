"""The lab's tools for building and measuring the project: not part of the `ddim` package, which
never imports them."""
