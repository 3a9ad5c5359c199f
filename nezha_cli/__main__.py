from nezha_cli.cli import main

main()
