from nfedge.cli import main

main()
