from benchmarks.scoring.cli import main

main()
