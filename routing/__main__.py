from routing.cli import main

main()
