"""Use cases. They talk to the store through a unit of work and to the world through ports."""
