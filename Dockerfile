# PLACEHOLDER — not a working image yet: the NGC base image and install steps arrive with the launch issue (#6).
FROM scratch
