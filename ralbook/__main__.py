from ralbook.cli import main

raise SystemExit(main())
