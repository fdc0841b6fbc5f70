from p2rec.cli import main

raise SystemExit(main())
