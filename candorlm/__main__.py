from candorlm.cli import main

main()
