from edgecompile.cli import main

main()
