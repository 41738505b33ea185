"""Task bodies behind ``auctionlab <task>``."""
