"""`python -m mae_tracker.server` (also mounted as `mae-tracker server`)."""

from mae_tracker.server.launch import server

if __name__ == "__main__":
    server()
