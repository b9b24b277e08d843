"""The task code workers run. Each module holds the tasks of one route family."""
