from mae_tracker.cli import main

main()
