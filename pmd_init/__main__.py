from .pid1.main import main

main()
