"""Device side: drivers, boards and the asyncio app."""
