from opensupervisor.cli import main

main()
