"""What a run leaves on disk: its record, score files, images (overlays, masks), metric tables.

Every writer reads the one run record built by :func:`.record.build_record`.
"""
