"""pacsflow-api: the results API and the reviewer side panel, reading the results store the routers write."""
