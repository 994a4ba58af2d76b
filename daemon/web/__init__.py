"""`i2vd web`: a dashboard and JSON API over the daemons' database, served as a process of its own."""
