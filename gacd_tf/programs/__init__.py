"""Command-line programs (absl): thin mains over the library."""
