from recjobs.cli import main

raise SystemExit(main())
