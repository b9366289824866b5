"""The passenger service: profiles and contact details of the people who ride."""
