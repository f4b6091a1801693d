from diffq.cli import main

main()
