from dlq.cli import main

main()
