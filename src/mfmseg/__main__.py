from mfmseg.cli import main

raise SystemExit(main())
