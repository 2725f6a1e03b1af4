from app.auth.cli import main

main()
