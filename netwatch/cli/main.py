"""Entry point placeholder; replaced by the real command tree."""


def main() -> None:
    raise SystemExit(0)
