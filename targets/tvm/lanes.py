"""The 16-lane tile every packed form shares (packed.py, winograd.py): a module of its own so that both import
it without importing each other."""
LANES, GROUP = 16, 4            # output channels per instruction, input channels per step
