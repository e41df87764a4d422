from eventctl.cli import main

main()
