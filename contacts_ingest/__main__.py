from contacts_ingest.commands.cli import main

main()
