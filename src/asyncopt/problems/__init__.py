"""Problems: objectives split across workers, with their data shards."""
