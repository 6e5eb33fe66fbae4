from routing.cli.main import main

main()
