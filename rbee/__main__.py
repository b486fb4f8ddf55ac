from rbee.cli import main

main()
