"""dom0's back ends: the services pyxen provides to a guest's PV front ends, standing as
dom0 (today the console ring, xenconsoled's role)."""
