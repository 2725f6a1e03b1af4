"""The order saga: its definition, its log, and the rules that route each failure."""
