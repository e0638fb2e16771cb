from contacts_ingest.cli import main

main()
