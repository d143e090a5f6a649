from shoprelay.cli import main

raise SystemExit(main())
