from ddpmctl.cli import main

main()
