from edgecompile.cli.main import main

main()
