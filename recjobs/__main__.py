import sys

try:
    from recjobs.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch imports: a line, not a traceback
    print("error: interrupted (SIGINT) before training started", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
