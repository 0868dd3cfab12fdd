"""Jobs: the state machine (states), the only SQL (store, migrations), and the worker that runs tunings."""
