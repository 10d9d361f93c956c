"""Writers that turn results into something a person reads: text tables (JSON is json.dumps)."""
