from .pid1.entry import main

main()
