from clarivis.cli import main

main()
